"""``osupgrade simulate``: scenario files, what-if runs, comparisons and the HTML report."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from xml.etree import ElementTree

import pytest

from engine.jsonpos import loads_located
from engine.runtime.live import LineProgress
from engine.sim.scenario import ScenarioError, load_policy, load_scenario
from engine.sim.simulate import Live, run_scenario
from events import InMemoryEventStore

ROOT = Path(__file__).resolve().parent.parent

SMALL = """{
  "name": "small what-if",
  "seed": 11,
  "image": {"newVersionBehaviour": {"unhealthyInstancePercent": 10, "bootSeconds": 60}},
  "engine": {"firstRolloutMaxDelay": "PT10M"},
  "scaleSets": [
    {"name": "web", "count": 3, "capacity": [5, 30]},
    {"name": "api", "count": 2, "capacity": 20, "healthSource": "extension",
     "zones": ["1", "2"],
     "upgradePolicy": {"mode": "Rolling",
       "rollingUpgradePolicy": {"maxBatchInstancePercent": 10},
       "automaticOSUpgradePolicy": {"enableAutomaticOSUpgrade": true,
                                    "useRollingUpgradePolicy": true}}},
    {"name": "jobs", "capacity": 10, "upgradePolicy": {"mode": "Manual"}},
    {"name": "fabric", "capacity": 10, "serviceFabric": true}
  ],
  "actions": [
    {"at": "PT1M", "do": "startUpgrade", "scaleSets": "jobs"},
    {"at": "PT5M", "do": "setHealth", "scaleSets": "web-001", "instancePercent": 40},
    {"at": "PT30M", "do": "clearHealth", "scaleSets": "web-001"}
  ]
}
"""

FAST = '{"name": "fast", "rollingUpgradePolicy": {"maxBatchInstancePercent": 50}}\n'
CAUTIOUS = """{"name": "cautious",
 "rollingUpgradePolicy": {"maxBatchInstancePercent": 5, "pauseTimeBetweenBatches": "PT1M"}}
"""


def osupgrade(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text)
    return path


def test_simulate_compares_policies_side_by_side_and_reports(tmp_path: Path) -> None:
    scenario = write(tmp_path, "scenario.json", SMALL)
    fast = write(tmp_path, "fast.json", FAST)
    cautious = write(tmp_path, "cautious.json", CAUTIOUS)
    report = tmp_path / "report.html"
    args = ["simulate", str(scenario), "--compare", str(fast), str(cautious)]
    first = osupgrade(*args, "--report", str(report))
    assert first.returncode == 0, first.stderr
    header = next(line for line in first.stdout.splitlines() if "measure" in line)
    assert header.index("as written") < header.index("fast") < header.index("cautious")
    for row in ("total duration", "instances upgraded", "instances rolled back", "peak unhealthy"):
        assert row in first.stdout
    assert "upgrades faulted" in first.stdout
    # deterministic: the same scenario and seed print the same table
    second = osupgrade(*args)
    assert second.returncode == 0, second.stderr
    assert first.stdout.split("report written")[0] == second.stdout
    page = report.read_text()
    charts = [f"<svg{c.split('</svg>')[0]}</svg>" for c in page.split("<svg")[1:]]
    assert len(charts) == 3  # one timeline per run
    for chart in charts:  # well-formed SVG with one area per instance state
        svg = ElementTree.fromstring(chart)
        assert len(svg.findall("{http://www.w3.org/2000/svg}polygon")) == 5
    assert "<script" not in page
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in page
    for label in ("as written", "fast", "cautious", "instances upgraded"):
        assert label in page
    assert "sim/rg/web-001</td><td>MaxUnhealthyInstancePercentExceeded" in page  # and why


async def test_a_run_is_measured_from_its_log(tmp_path: Path) -> None:
    scenario = load_scenario(write(tmp_path, "s.json", SMALL))
    outcome = await run_scenario(scenario, store=InMemoryEventStore())
    expected_instances = sum(spec.capacity for spec in scenario.specs())
    assert outcome.instances == expected_instances
    assert outcome.scale_sets == len(scenario.specs())
    assert outcome.upgraded + outcome.failed <= expected_instances
    assert sum(outcome.upgrades.values()) == len(scenario.specs())  # the manual one was started
    # the timeline's counts always add up to the fleet, and end with no instance in flight
    assert all(sum(counts.values()) == expected_instances for _, counts in outcome.timeline)
    assert outcome.timeline[-1][1]["upgrading"] == 0
    assert outcome.timeline[-1][1]["upgraded"] == outcome.upgraded
    # web-001 was 40 % unhealthy from +5 min: its upgrade cannot have completed normally
    latest = outcome.view.latest("sim/rg/web-001")
    assert latest is not None
    assert latest["properties"]["runningStatus"]["code"] == "Faulted"
    assert outcome.peak_unhealthy_percent > 0


async def test_service_fabric_goes_update_domain_by_update_domain(tmp_path: Path) -> None:
    scenario = load_scenario(write(tmp_path, "s.json", SMALL))
    store = InMemoryEventStore()
    await run_scenario(scenario, store=store)
    upgrade_streams = {
        e.stream_id
        for e in await store.read_all(limit=100_000)
        if e.type == "upgrade.requested" and e.data["scale_set"] == "sim/rg/fabric"
    }
    (stream,) = upgrade_streams
    batches = [e.data for e in await store.read_stream(stream) if e.type == "upgrade.batch_started"]
    assert [b["reason"] for b in batches] == [f"update domain {d}" for d in range(5)]
    assert sorted(map(int, batches[0]["members"])) == [0, 5]


def test_the_example_files_are_valid() -> None:
    examples = ROOT / "tools" / "scenarios"
    scenario = load_scenario(examples / "mixed-fleet.json")
    assert len(scenario.specs()) > 10
    assert {load_policy(p).name for p in examples.glob("policy-*.json")} == {"cautious", "fast"}


def _where(text: str, needle: str) -> tuple[int, int]:
    offset = text.index(needle)
    line = text.count("\n", 0, offset) + 1
    return line, offset - (text.rfind("\n", 0, offset) + 1) + 1


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('"capacity": [5, 30]', '"capacity": [5, >>0]', "must be an integer from 1 to 1000"),
        ('"count": 3', '"count": >>"three"', "must be an integer"),
        ('"zones"', '"capacty": >>4, "zones"', "unknown field 'capacty'"),
        ('"at": "PT5M"', '"at": >>"5 minutes"', "not an ISO 8601 duration"),
        ('"scaleSets": "web-001", "i', '"scaleSets": >>"web-9", "i', "no scale set or group"),
        ('"maxBatchInstancePercent": 10', '"maxBatchInstancePercent": >>1', "from 5 to 100"),
        ('"image": {', '"image": {"newVersion": >>"0.9.0", ', "must be newer than"),
        ('"image": {', '"image": {"sku": >>"18.04 LTS", ', "must be a name of letters"),
    ],
)
def test_a_bad_scenario_gets_a_line_precise_error(
    tmp_path: Path, old: str, new: str, message: str
) -> None:
    marked = SMALL.replace(old, new, 1)  # ">>" marks where the error must point
    assert marked != SMALL
    text = marked.replace(">>", "")
    path = write(tmp_path, "bad.json", text)
    with pytest.raises(ScenarioError) as caught:
        load_scenario(path)
    error = caught.value
    assert message in error.message
    assert (error.line, error.column) == _where(marked, ">>"), str(error)
    assert str(error).startswith(f"{path}:{error.line}:{error.column}: ")


def test_an_engine_rule_is_reported_at_its_scale_set(tmp_path: Path) -> None:
    old = '"capacity": [5, 30]}'
    text = SMALL.replace(old, '"capacity": [5, 30], "healthSource": "none"}', 1)
    with pytest.raises(ScenarioError) as caught:
        load_scenario(write(tmp_path, "bad.json", text))
    assert "health probe or health extension was not specified" in caught.value.message
    assert caught.value.pointer == "/scaleSets/0"
    assert (caught.value.line, caught.value.column) == _where(text, '{"name": "web"')


def test_a_bad_scenario_file_exits_2_with_file_line_and_column(tmp_path: Path) -> None:
    broken = write(tmp_path, "broken.json", SMALL.replace('"seed": 11,', '"seed": 11', 1))
    result = osupgrade("simulate", str(broken))
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: {broken}:4:3: not JSON: Expecting ',' delimiter")
    assert "Traceback" not in result.stderr
    missing = osupgrade("simulate", str(tmp_path / "nope.json"))
    assert missing.returncode == 2
    assert "cannot read the file" in missing.stderr
    policy = write(tmp_path, "policy.json", '{"rollingUpgradePolicy": {"maxSurge": "yes"}}')
    bad_policy = osupgrade(
        "simulate", str(write(tmp_path, "ok.json", SMALL)), "--compare", str(policy)
    )
    assert bad_policy.returncode == 2
    assert f"{policy}:1:39: must be true or false" in bad_policy.stderr


def test_json_positions_follow_pointers() -> None:
    doc = loads_located('{\n  "a/b": [1,\n    {"c": "x"}],\n  "d": {}\n}')
    assert doc.line_col("/a~1b/1/c") == (3, 11)
    assert doc.line_col("/a~1b/0") == (2, 11)
    assert doc.line_col("/d") == (4, 8)
    assert doc.line_col("/d/missing") == (4, 8)  # the nearest parent that exists


def test_logs_are_json_lines_with_the_worker_context(tmp_path: Path) -> None:
    scenario = write(tmp_path, "s.json", SMALL)
    result = osupgrade("--log-format", "json", "-v", "simulate", str(scenario))
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stderr.splitlines()]
    finished = [r for r in records if r["event"] == "upgrade finished"]
    assert len(finished) == len(load_scenario(scenario).specs())
    assert all({"scale_set", "upgrade_id", "position", "timestamp"} <= r.keys() for r in finished)


def test_the_examples_in_the_docs_are_valid(tmp_path: Path) -> None:
    doc = (ROOT / "docs" / "SIMULATE.md").read_text()
    blocks = [b.split("```", 1)[0] for b in doc.split("```json\n")[1:]]
    assert len(blocks) == 2
    scenario = load_scenario(write(tmp_path, "scenario.json", blocks[0]))
    assert scenario.seed == 7
    assert load_policy(write(tmp_path, "policy.json", blocks[1])).name == "cautious"


DEFERRED = """{"engine": {"firstRolloutMaxDelay": "PT0S"},
  "scaleSets": [{"name": "db", "capacity": 5, "upgradePolicy": {
    "mode": "Automatic", "automaticOSUpgradePolicy": {
      "enableAutomaticOSUpgrade": true, "osRollingUpgradeDeferral": true}}}],
  "actions": [ACTIONS]}"""


async def test_deferred_upgrades_wait_for_approval(tmp_path: Path) -> None:
    def scenario(actions: str) -> Path:
        return write(
            tmp_path,
            "deferred.json",
            DEFERRED.replace("ACTIONS", actions),
        )

    waiting = await run_scenario(load_scenario(scenario("")))
    assert (waiting.unfinished, waiting.upgraded) == (1, 0)
    approved = await run_scenario(
        load_scenario(scenario('{"at": "PT2H", "do": "approveUpgrade", "scaleSets": "db"}'))
    )
    assert (approved.unfinished, approved.upgraded) == (0, 5)
    assert approved.first_start is not None and approved.last_end is not None
    assert approved.last_end - approved.first_start > timedelta(hours=2)


@pytest.mark.parametrize(
    ("where", "problem"),
    [("directory", "is a directory"), ("under-a-file", "notes.txt is not a directory")],
)
def test_a_report_that_cannot_be_written_fails_before_the_run(
    tmp_path: Path, where: str, problem: str
) -> None:
    scenario = write(tmp_path, "scenario.json", SMALL)
    blocker = write(tmp_path, "notes.txt", "a file, not a directory\n")
    report = tmp_path if where == "directory" else blocker / "report.html"
    result = osupgrade("simulate", str(scenario), "--report", str(report))
    assert result.returncode == 2
    assert result.stdout == ""  # nothing ran: the header of a run is not even printed
    assert result.stderr.startswith(f"error: --report {report}: ")
    assert result.stderr.endswith(f"{problem}\n")
    assert result.stderr.count("\n") == 1  # one line, no traceback


def test_a_run_without_a_terminal_shows_progress_on_stderr() -> None:
    clock = iter([0.0, 1.0, 6.0, 6.5, 12.0])
    out = io.StringIO()
    progress = LineProgress("as written", every_s=5.0, out=out, monotonic=lambda: next(clock))
    live = Live(
        instances_total=100, instances_done=40, instances_failed=2, instances_rolled_back=2,
        sets_total=10, sets_completed=3, sets_faulted=1, sets_cancelled=0,
        virtual_time=datetime(2026, 3, 1, 1, 30, tzinfo=UTC),
    )  # fmt: skip
    for _ in range(4):
        progress.update(live)
    lines = out.getvalue().splitlines()
    assert lines == [
        "simulate as written: 6 s, scale sets 4/10 finished, instances 42/100 settled"
        " (engine time 01:30)",
        "simulate as written: 12 s, scale sets 4/10 finished, instances 42/100 settled"
        " (engine time 01:30)",
    ]
