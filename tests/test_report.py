"""The report of a tiny real study, opened in headless Chromium (Debian's `chromium`).

The study: 2 recipes x 3 seeds x 1 learning rate, 500 training images, 1 epoch, trained,
aggregated and reported through the CLI. The browser is driven over the Chrome DevTools
protocol on a pipe (--remote-debugging-pipe: JSON messages ending in NUL on file descriptors
3 and 4), which needs no network, no driver and no Python package.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import re
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest

from mnistbench import stats
from mnistbench.cli import main
from mnistbench.verdicts import judge_recipes, load_metrics, load_tables, reached_note, unlearned_note, vote_note

RECIPES = ["nielsen_ch1_fc100", "seed_dense_mse"]  # one architecture under both protocols
SEEDS = [1, 2, 3]
CHROMIUM = next(filter(None, map(shutil.which, ["chromium", "chromium-browser", "google-chrome"])), None)


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory, data_dir):
    root = tmp_path_factory.mktemp("report")
    study_dir = root / "results" / "tiny"
    os.environ["MNISTBENCH_DATA_DIR"] = str(data_dir)  # module scope: the autouse fixture is per test
    for recipe in RECIPES:
        for seed in SEEDS:
            out = study_dir / "runs" / recipe / "lr=3" / f"seed={seed}"
            assert main(["train", "--recipe", recipe, "--seed", str(seed), "--epochs", "1",
                         "--train-subset", "500", "--device", "cpu", "--threads", "1", "--quiet",
                         "--no-checkpoint", "--study", "tiny", "--pipeline-check", "--out", str(out)]) == 0
    assert main(["aggregate", str(study_dir), "--pipeline-check"]) == 0
    out = root / "reports" / "tiny"
    config = json.dumps({"description": "browser test study", "pipeline_check": True,
                         "recipes": RECIPES, "seeds": SEEDS, "epochs": 1, "train_subset": 500})
    assert main(["report", "--study-dir", str(study_dir), "--out", str(out), "--study-config", config]) == 0
    return study_dir, out


def test_report_files(tiny_report):
    study_dir, out = tiny_report
    html = (out / "index.html").read_text()
    for name in ["figures/published_vs_replicated", "figures/protocol_comparison",
                 *(f"learning_curves/{r}" for r in RECIPES)]:
        for suffix in (".png", ".svg"):
            assert (out / f"{name}{suffix}").stat().st_size > 1000, name + suffix
    # self-contained: every image embedded, no external style sheet, script or font
    assert not re.search(r"""(src|href)=["'](?!data:|#)""", html)
    assert "<script" not in html and "<link" not in html and "@import" not in html
    assert html.count('src="data:image/png;base64,') == 2 + len(RECIPES)
    assert '<html lang="en">' in html and 'name="viewport"' in html
    # every image has alt text, every summary column a header
    assert not re.search(r"<img(?![^>]*\balt=\"[^\"]{20,})", html)
    assert html.count('<th scope="col"') >= 10
    # the quick/tiny study is a pipeline check, and says so
    assert "pipeline check, not a replication" in html.lower()
    # every run's folder is named, so each number can be traced to its metrics.json
    runs = pd.read_csv(study_dir / "runs.csv")
    assert len(runs) == len(RECIPES) * len(SEEDS)
    for run_dir in runs["run_dir"]:
        assert run_dir in html
    # the summary's numbers are the report's numbers
    for _, row in pd.read_csv(study_dir / "summary.csv").iterrows():
        assert f"{row['mean']:.2f} ± {row['std']:.2f}" in html
        assert f"[{row['ci95_low']:.2f}, {row['ci95_high']:.2f}]" in html


def test_report_rewrites_git_tracked_files_only_when_asked(tiny_report, tmp_path):
    """`mnistbench report --study-dir results/replication` must not rewrite the tracked page
    and figures of the record; --write-tracked does (the workflow's report step passes it)."""
    study_dir, _ = tiny_report
    out = tmp_path / "reports" / "tiny"
    out.mkdir(parents=True)
    (out / "README.md").write_text("the tracked page\n")
    git = lambda *args: subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)
    git("init", "-q")
    git("add", "reports/tiny/README.md")
    old = os.umask(0o022)
    try:
        assert main(["report", "--study-dir", str(study_dir), "--out", str(out)]) == 0
        assert (out / "README.md").read_text() == "the tracked page\n"
        assert not (out / "figures").exists()  # built aside: only the untracked page comes over
        assert (out / "index.html").is_file()
        assert main(["report", "--study-dir", str(study_dir), "--out", str(out), "--write-tracked"]) == 0
    finally:
        os.umask(old)
    assert (out / "README.md").read_text() != "the tracked page\n" and (out / "figures").is_dir()
    for name in ("README.md", "index.html"):  # readable by others, as open() makes a file
        assert (out / name).stat().st_mode & 0o777 == 0o644, name


def test_a_planned_recipe_without_runs_is_listed_as_such(tiny_report, tmp_path):
    """A study's table names every number it plans: one with no run yet gets a line saying so,
    on both pages, and no verdict."""
    study_dir, _ = tiny_report
    config = json.dumps({"pipeline_check": True, "recipes": [*RECIPES, "nielsen_ch6_basic_conv"]})
    assert main(["report", "--study-dir", str(study_dir), "--out", str(tmp_path), "--study-config", config]) == 0
    markdown = (tmp_path / "README.md").read_text()
    assert "| `nielsen_ch6_basic_conv` | 98.78 | – | no runs yet |" in markdown
    assert "; 1 planned without a run yet." in markdown
    html = (tmp_path / "index.html").read_text().replace("<wbr>", "")
    assert re.search(r"nielsen_ch6_basic_conv</th>\s*<td class=\"num\">98.78</td>.{0,300}no runs yet", html, re.S)
    assert "no runs yet" not in (tiny_report[1] / "README.md").read_text()  # the study without it


def test_runs_that_changed_the_recipe_get_no_verdict(tiny_report):
    # judged as if it were not a pipeline check: 1 epoch on 500 images is not the published recipe
    study_dir, _ = tiny_report
    runs, summary = load_tables(study_dir)
    rows = {r["recipe"]: r for r in judge_recipes(runs, summary, load_metrics(runs, study_dir),
                                                  pipeline_check=False)}
    assert rows["nielsen_ch1_fc100"]["verdict"] == "settings changed"
    assert rows["nielsen_ch1_fc100"]["reason"] == "epochs 1 instead of 30; train images 500 instead of 50,000"
    assert rows["seed_dense_mse"]["reason"] == "epochs 1 instead of 30; train images 500 instead of 60,000"
    for recipe, row in rows.items():
        line = summary[summary["recipe"] == recipe].iloc[0]
        assert (row["n"], row["mean"], row["sd"]) == (3, line["mean"], line["std"])
        assert row["diff_pp"] == pytest.approx(line["mean"] - row["published"])
        assert len(row["run_index"]) == 3


def test_runs_that_never_learned_a_digit_are_named_in_the_verdicts_reason():
    runs = pd.DataFrame({"seed": [1, 2, 3], "unlearned_digits": pd.array(["9", "none", "0 3"], dtype="string")})
    assert unlearned_note(runs) == ("2 of 3 runs never learned a digit (test recall below 50%): "
                                    "digit 9 (seed 1), digits 0 3 (seed 3)")
    assert unlearned_note(runs.iloc[[1]]) is None
    assert unlearned_note(pd.DataFrame({"seed": [1], "unlearned_digits": pd.array([pd.NA], dtype="string")})) is None
    assert unlearned_note(pd.DataFrame({"seed": [1]})) is None  # tables from before the column


def test_a_missed_number_says_whether_any_epoch_reached_it():
    """"Above" has two causes to tell apart: nets that touch the number at some epoch (the
    selection falls short) and nets that never do; the note counts the runs that touched it."""
    def run(*tests):
        return {"history": [{"epoch": i + 1, "test_accuracy": t} for i, t in enumerate(tests)]}
    records = [run(99.50, 99.61, 99.55), run(99.52, 99.58), run(99.59, None, 99.60)]
    low, _ = stats.printed_range("99.60")
    assert reached_note(records, "99.60", low) == ("2 of 3 runs reached 99.60% at some epoch "
                                                   "(peak test accuracy 99.61%)")
    assert reached_note([{"history": []}, {}], "99.60", low) is None  # nothing per epoch to read
    # A number the source measured on validation (the book's 98.04%) is looked for there
    records = [{"history": [{"epoch": 1, "test_accuracy": 98.10, "val_accuracy": 97.90}]},
               {"history": [{"epoch": 1, "test_accuracy": 97.80, "val_accuracy": 98.05}]}]
    low, _ = stats.printed_range("98.04")
    assert reached_note(records, "98.04", low, "validation") == (
        "1 of 2 runs reached 98.04% at some epoch (peak validation accuracy 98.05%)")
    assert reached_note(records, "98.04", low) == ("1 of 2 runs reached 98.04% at some epoch "
                                                   "(peak test accuracy 98.10%)")


def test_an_ensembles_reason_says_what_the_vote_added():
    members = [{"seed": s, "final_test_accuracy": a} for s, a in enumerate([99.5, 99.6, 99.55, 99.45, 99.5], 1)]
    assert vote_note([{"members": members, "selected_accuracy": 99.62}]) == \
        "members' final epochs average 99.52%, the vote adds +0.10 point"
    assert vote_note([{"members": [], "selected_accuracy": None}]) is None


def test_report_without_tables_is_one_clear_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["report", "--study-dir", str(tmp_path / "empty"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "runs.csv" in err and "aggregate" in err
    assert not (tmp_path / "out" / "index.html").exists()


# --- the browser ----------------------------------------------------------------------------

class Chromium:
    """Headless Chromium driven over the DevTools protocol on a pipe."""

    FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--hide-scrollbars", "--remote-debugging-pipe"]

    def __init__(self, user_data_dir: Path):
        to_browser, self._writer = os.pipe()
        self._reader, from_browser = os.pipe()

        def pipes_as_fd_3_and_4():  # in the child: the protocol's fixed descriptors
            high_in, high_out = (fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_browser, from_browser))
            os.dup2(high_in, 3)
            os.dup2(high_out, 4)

        self.process = subprocess.Popen(
            [CHROMIUM, *self.FLAGS, f"--user-data-dir={user_data_dir}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=pipes_as_fd_3_and_4, close_fds=False)
        os.close(to_browser)
        os.close(from_browser)
        self._buffer, self._next_id, self.events = b"", 0, []

    def send(self, method: str, session: str | None = None, timeout: float = 60, **params) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._writer, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._receive(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self.events.append(reply)

    def wait_for(self, event: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == event for e in self.events):
            self.events.append(self._receive(deadline))
        return next(e for e in self.events if e.get("method") == event)

    def _receive(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            ready, _, _ = select.select([self._reader], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise TimeoutError("no answer from chromium")
            chunk = os.read(self._reader, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium closed the pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=10)
        except (OSError, RuntimeError, TimeoutError):
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._writer)
        os.close(self._reader)


def open_page(browser: Chromium, url: str, width: int, height: int) -> str:
    target = browser.send("Target.createTarget", url="about:blank")["targetId"]
    session = browser.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
    for domain in ("Page", "Runtime", "Log"):
        browser.send(f"{domain}.enable", session)
    browser.send("Emulation.setDeviceMetricsOverride", session, width=width, height=height,
                 deviceScaleFactor=1, mobile=width < 600)
    browser.events.clear()
    browser.send("Page.navigate", session, url=url)
    browser.wait_for("Page.loadEventFired")
    return session


def evaluate(browser: Chromium, session: str, expression: str):
    result = browser.send("Runtime.evaluate", session, expression=expression, returnByValue=True)
    assert "exceptionDetails" not in result, result
    return result["result"]["value"]


def console_errors(events: list[dict]) -> list[str]:
    errors = []
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            errors.append(json.dumps(params.get("args")))
        elif method == "Runtime.exceptionThrown":
            errors.append(json.dumps(params.get("exceptionDetails")))
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            errors.append(params["entry"].get("text", ""))
    return errors


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium; "
                                               ".ci/run installs it)")
@pytest.mark.parametrize("width,height", [(1280, 900), (390, 844)], ids=["desktop", "phone"])
def test_report_in_chromium(tiny_report, tmp_path, width, height):
    study_dir, out = tiny_report
    browser = Chromium(Path(tempfile.mkdtemp(dir=tmp_path, prefix="chromium-profile-")))
    try:
        session = open_page(browser, (out / "index.html").resolve().as_uri(), width, height)
        images = evaluate(browser, session, "Array.from(document.images).map(i => "
                          "({complete: i.complete, width: i.naturalWidth, alt: i.alt}))")
        rows = evaluate(browser, session, "Array.from(document.querySelectorAll("
                        "'table.summary tbody tr th[scope=row] a')).map(a => a.textContent.trim())")
        overflow = evaluate(browser, session, "document.documentElement.scrollWidth - window.innerWidth")
        banner = evaluate(browser, session, "document.querySelector('.banner').innerText")
        shot = browser.send("Page.captureScreenshot", session, format="png", captureBeyondViewport=True)
        errors = console_errors(browser.events)
    finally:
        browser.close()
    screenshot = tmp_path / f"report-{width}px.png"
    screenshot.write_bytes(base64.b64decode(shot["data"]))
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    assert errors == []
    assert len(images) == 2 + len(RECIPES)  # published vs replicated, protocols, the curves
    assert all(i["complete"] and i["width"] > 0 and i["alt"] for i in images), images
    # one summary row per published number of the study
    published = pd.read_csv(study_dir / "summary.csv")["recipe"].unique()
    assert sorted(rows) == sorted(published) == sorted(RECIPES)
    assert "Pipeline check, not a replication" in banner
    assert overflow <= 0  # the page fits the screen: wide tables scroll inside their box


def test_total_wall_time_is_never_less_than_the_training_it_contains():
    """Records made before stretches were recorded give their last stretch's wall time only: a
    resumed run's can be 44 s against 5,270 s of training. The report counts at least the
    training, and says how many records are such."""
    from mnistbench.report import run_walls

    trained = pd.DataFrame({"wall_seconds": [44.0, 100.0, 300.0], "train_seconds": [5270.0, 90.0, 250.0],
                            "eval_seconds": [30.0, 5.0, 20.0]})
    metrics = {0: {"recipe": "x"}, 1: {"recipe": "x"}, 2: {"recipe": "x", "stretches": []}}
    walls, partial, short = run_walls(trained, metrics)
    assert list(walls) == [5300.0, 100.0, 300.0] and (partial, short) == (2, 1)
    assert walls.sum() >= (trained["train_seconds"] + trained["eval_seconds"]).sum()


def test_protocol_comparison_tick_labels_do_not_overlap():
    """Six long recipe ids in one panel (the dense nets' group of the record) stay legible."""
    import itertools
    import math

    from mnistbench.figures import protocol_comparison

    recipes = ["nielsen_ch1_fc100", "nielsen_ch3_fc100_ce_l2", "nielsen_ch3_fc100_ce_l2_60ep",
               "nielsen_ch3_fc100_ce_l2_60ep_large_init", "nielsen_ch6_fc100", "seed_dense_mse"]
    runs = pd.DataFrame({"status": ["finished"] * 6, "selected_accuracy": [97.0 + i / 10 for i in range(6)]})
    judged = {r: {"run_index": [i], "mean": 97.0, "ci_low": math.nan, "ci_high": math.nan,
                  "published": 97.5, "protocol": "nielsen"} for i, r in enumerate(recipes)}
    groups = [{"recipes": recipes, "label": "fc 784-100-10"},
              {"recipes": recipes[:2], "label": "conv20+pool | conv40+pool | fc100 | softmax"}]
    fig = protocol_comparison(runs, groups, judged)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        boxes = [label.get_window_extent(renderer) for label in ax.get_xticklabels()]
        assert not any(a.overlaps(b) for a, b in itertools.combinations(boxes, 2))
    titles = [ax.title.get_window_extent(renderer) for ax in fig.axes]
    assert not any(a.overlaps(b) for a, b in itertools.combinations(titles, 2))


def test_the_html_page_shows_code_not_backticks():
    from mnistbench.report import code_spans

    html = "<td>`seed_relu_wd01` is the faithful recipe; `snakemake` trains</td><pre>a `b` c</pre>"
    assert code_spans(html) == ("<td><code>seed_relu_wd01</code> is the faithful recipe; <code>snakemake"
                                "</code> trains</td><pre>a <code>b</code> c</pre>")
    assert code_spans("<p>one ` alone</p>") == "<p>one ` alone</p>"
