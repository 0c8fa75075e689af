# Runs under CPython 2.7: the book's plurality for every ordered vote of five digits.
import itertools, sys
from collections import Counter
out = []
for v in itertools.product(range(10), repeat=5):
    out.append(str(Counter(v).most_common(1)[0][0]))
sys.stdout.write("".join(out))
