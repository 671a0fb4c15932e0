"""The size planner (issue 35) without training: the scaling-law fit recovers a known law from synthetic end
points, the crossover of two sizes is the analytic one, the plan stage reads tiny synthetic calibration curves
and writes its plan, and the default `dvc repro` leaves the calibration runs out."""
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, TINY, make_tiny_project, set_params, tiny_training
from lib.calibration import CALIBRATION, calibration_files, check_runs, claim_a_note, scaled_params, with_plan_note
from lib.model_size import model_non_embedding_params
from lib.params import load_params
from lib.scaling import Law, bootstrap_laws, crossover, fit_law, interval

TRUE = Law(E=5.0, A=300.0, B=2000.0, alpha=0.4, beta=0.45)
# the default masked-LM grid's sizes and tokens/s (run at 23e2a9d), at 1/8 and 1/4 of 270 s
N = np.array([786432, 1572864, 3145728, 7077888] * 2, dtype=float)
RATE = np.array([10168, 7926, 4968, 3009] * 2, dtype=float)
D = RATE * np.repeat([33.75, 67.5], 4)


def analytic_crossover(law: Law, small: tuple, large: tuple) -> float:
    """Where A (N_s^-alpha - N_l^-alpha) = B (r_l^-beta - r_s^-beta) t^-beta."""
    gain = law.A * (small[0] ** -law.alpha - large[0] ** -law.alpha)
    cost = law.B * (large[1] ** -law.beta - small[1] ** -law.beta)
    return (cost / gain) ** (1 / law.beta)


def test_fit_recovers_the_law_from_exact_end_points():
    law = fit_law(N, D, TRUE.loss(N, D))
    for key, value in TRUE.as_dict().items():
        assert getattr(law, key) == pytest.approx(value, rel=1e-4), key


def test_fit_recovers_the_law_from_noisy_end_points_within_its_interval():
    n, d = np.repeat([1e5, 4e5, 1.6e6, 6.4e6], 4), np.tile([1e6, 4e6, 1.6e7, 6.4e7], 4)
    loss = TRUE.loss(n, d) * np.exp(0.003 * np.random.default_rng(2).standard_normal(len(n)))
    law = fit_law(n, d, loss)
    assert law.alpha == pytest.approx(TRUE.alpha, abs=0.05) and law.beta == pytest.approx(TRUE.beta, abs=0.05)
    # what the plan uses: the predicted final loss at a budget 4x past the largest calibration point
    assert np.abs(law.loss(n, 4 * d) - TRUE.loss(n, 4 * d)).max() < 0.05
    laws = bootstrap_laws(n, d, loss, 20, start=law)
    lo, hi = interval([b.loss(1e6, 2.56e8) for b in laws])
    assert lo - 0.05 <= float(TRUE.loss(1e6, 2.56e8)) <= hi + 0.05


def test_held_exponents_are_not_fitted():
    law = fit_law(N, D, TRUE.loss(N, D), fixed={"beta": 0.45})
    assert law.beta == 0.45 and law.alpha == pytest.approx(0.4, rel=1e-3)


def test_crossover_is_the_analytic_one():
    small, large = (786432.0, 10168.0), (7077888.0, 3009.0)
    expected = analytic_crossover(TRUE, small, large)
    found = crossover(TRUE, small, large, 1.0, 1e9)
    assert found["larger_better"] == "above"
    assert found["budget"] == pytest.approx(expected, rel=1e-6)
    assert TRUE.at_budget(*large, 1.1 * expected) < TRUE.at_budget(*small, 1.1 * expected)
    assert TRUE.at_budget(*large, 0.9 * expected) > TRUE.at_budget(*small, 0.9 * expected)


def test_no_crossover_within_the_range_says_which_side_wins():
    small, large = (786432.0, 10168.0), (7077888.0, 3009.0)
    t = analytic_crossover(TRUE, small, large)
    assert crossover(TRUE, small, large, t / 100, t / 10) == {"budget": None, "larger_better": "never"}
    assert crossover(TRUE, small, large, 10 * t, 100 * t) == {"budget": None, "larger_better": "throughout"}
    faster = (7077888.0, 20000.0)  # larger and faster: better at every budget
    assert crossover(TRUE, small, faster, 1.0, 1e9)["larger_better"] == "throughout"


def test_calibration_budget_is_the_recipes_scaled():
    params = load_params(REPO / "params.yaml")
    scaled = scaled_params(params, "pretrain", 0.125)
    assert scaled.pretrain.recipe.budget.seconds == params.pretrain.recipe.budget.seconds * 0.125
    assert scaled.train_mt == params.train_mt and params.pretrain.recipe.budget.seconds == 270
    # the warm-up takes the full run's share of every shorter run, and a longer run keeps the recipe's
    assert params.pretrain.recipe.warmup_updates == 50 and scaled.pretrain.recipe.warmup_updates == 6
    assert scaled_params(params, "train_mt", 0.25).train_mt.recipe.warmup_updates == 8
    assert scaled_params(params, "pretrain", 0.001).pretrain.recipe.warmup_updates == 1
    assert scaled_params(params, "pretrain", 4.0).pretrain.recipe.warmup_updates == 50


# ---------------------------------------------------------------- the plan stage on synthetic curves

SIZES = {**TINY, "T3": {"layers": 2, "hidden": 32, "ffn": 64, "heads": 2}}  # T1-T3 depth, T3-T2 width
FRACTIONS = [0.125, 0.25, 0.5]


def write_curve(path: Path, law: Law, n: float, rate: float, updates: int) -> None:
    """A curve whose last point is the law's end point after `updates` at `rate` tokens per update."""
    path.parent.mkdir(parents=True, exist_ok=True)
    points = sorted({max(1, updates // 2), updates})
    lines = ["updates,seconds,tokens,flops,lr,train_loss,valid_loss,valid_ppl,valid_accuracy,valid_bleu"]
    for u in points:
        loss = float(law.loss(n, rate * u)) + (0.3 if u < updates else 0.0)
        lines.append(f"{u},{u / 10},{int(rate * u)},{6 * n * rate * u:.4g},0.001,{loss},{loss},{2 ** loss},,")
    path.write_text("\n".join(lines) + "\n")


LAW = Law(E=2.0, A=40.0, B=300.0, alpha=0.4, beta=0.45)  # every synthetic end point lies on it
RATES = {"T1": 400.0, "T2": 150.0, "T3": 250.0}         # tokens per update


@pytest.fixture
def calibrated(tiny_project):
    """Synthetic calibration curves of every size and fraction (updates budgets), and full-budget curves of
    the masked-LM sizes, all end points on one law."""
    def edit(p):
        tiny_training(p, pretrain_updates=4000, mt_updates=4000)
        p["models"] = {"mlm": SIZES, "mt": SIZES}
        p["pretrain"]["sizes"] = p["train_mt"]["sizes"] = ["T1", "T2"]   # trained in full: any of the candidates
        p["plan"].update(mlm_sizes=["T1", "T2", "T3"], mt_sizes=["T1", "T2", "T3"])
        p["plan"].update(fractions=FRACTIONS, bootstrap=10, crossover_range=[1, 1e9])
    set_params(tiny_project, edit)
    params = load_params()
    for stage, kind in (("pretrain", "mlm"), ("train_mt", "mt")):
        for name, rate in RATES.items():
            n = model_non_embedding_params(params.models.mlm[name], kind)
            for f in FRACTIONS:
                write_curve(calibration_files(stage, name, f)[0], LAW, n, rate, int(4000 * f))
            if stage == "pretrain":
                write_curve(Path("reports/curves") / f"pretrain-{name}.csv", LAW, n, rate, 4000)
    return tiny_project


def test_plan_stage_writes_the_plan_from_calibration_curves(calibrated):
    from stages import plan
    plan.main([])
    result = json.loads(Path("reports/plan.json").read_text())
    mlm, mt = result["mlm"], result["mt"]
    assert mlm["unit"] == "updates" and mlm["target"] == 4000
    assert mlm["fitted_points"] == 9 and mlm["free_parameters"] == 5
    # every full run's end point lies on the law the calibration points follow
    assert all(abs(p["full"]["error"]) < 0.05 and abs(p["full"]["error_at_tokens"]) < 0.05 for p in mlm["predictions"])
    assert all("full" not in p for p in mt["predictions"])
    assert {(x["small"], x["large"]) for x in mlm["crossovers"]} == {("T1", "T3"), ("T3", "T2")}
    assert mlm["best"] in ("T1", "T2", "T3")
    text = Path("reports/plan.md").read_text()
    assert "## Masked LM (pretrain)" in text and "## Translation (train_mt)" in text
    assert "9 end points of the calibration runs with 5 free parameters: 4 degrees of freedom" in text
    assert "Prediction error at the full-budget runs" in text and "No full-budget run to compare" in text
    assert Path("reports/plan.png").stat().st_size > 10_000
    note = claim_a_note()
    assert note.startswith(". The size plan") and "T3 over T1 from" in note
    assert f"claim (a) would start to hold here at {max(x['budget'] for x in mlm['crossovers']):.3g} updates" in note


def test_plan_options_fit_the_full_runs_and_hold_an_exponent(calibrated):
    from stages import plan
    set_params(calibrated, lambda p: p["plan"].update(fit_full_runs=True, fix_beta=0.45, target_budget=8000))
    plan.main([])
    mlm = json.loads(Path("reports/plan.json").read_text())["mlm"]
    assert mlm["fitted_points"] == 12 and mlm["free_parameters"] == 4 and mlm["law"]["beta"] == 0.45
    assert mlm["target"] == 8000 and mlm["predictions"][0]["tokens"] == 8000 * mlm["predictions"][0]["rate"]
    text = Path("reports/plan.md").read_text()
    assert "12 end points of the calibration and full-budget runs with 4 free parameters (beta held at 0.45)" in text
    assert "(in-sample: plan.fit_full_runs fits them too)" in text


def test_check_runs_are_compared_out_of_sample_and_their_sides_judged(calibrated):
    """Runs by hand at a fraction not calibrated (here x2) are compared with the prediction, never fitted; a pair
    checked at the same fraction is judged on which size measured lower."""
    from stages import plan
    params = load_params()
    n = {name: model_non_embedding_params(params.models.mlm[name], "mlm") for name in RATES}
    for name in ("T1", "T2"):
        write_curve(calibration_files("pretrain", name, 2.0)[0], LAW, n[name], RATES[name], 8000)
    shifted = calibration_files("pretrain", "T2", 2.0)[0]  # T2's check measured 1 bit above the law
    shifted.write_text(re.sub(r"(\n8000,[^,]*,[^,]*,[^,]*,[^,]*,)([^,]*),([^,]*)",
                              lambda m: f"{m[1]}{float(m[2]) + 1},{float(m[3]) + 1}", shifted.read_text()))
    plan.main([])
    mlm = json.loads(Path("reports/plan.json").read_text())["mlm"]
    assert mlm["fitted_points"] == 9                           # the checks are not fitted
    checks = {c["size"]: c for c in mlm["checks"]}
    assert set(checks) == {"T1", "T2"} and checks["T1"]["fraction"] == 2.0
    assert abs(checks["T1"]["error_at_tokens"]) < 0.05
    assert checks["T2"]["error_at_tokens"] == pytest.approx(-1.0, abs=0.05)
    assert checks["T1"]["reach"] == pytest.approx(4.0)        # 8000 updates over the longest run's 2000
    law_lower = "T1" if LAW.loss(n["T1"], RATES["T1"] * 8000) < LAW.loss(n["T2"], RATES["T2"] * 8000) else "T2"
    gap = abs(LAW.loss(n["T1"], RATES["T1"] * 8000) - LAW.loss(n["T2"], RATES["T2"] * 8000))
    [pair] = mlm["check_pairs"]
    assert pair["measured_lower"] == "T1" and pair["tokens"]["predicted_lower"] == law_lower
    assert pair["tokens"]["predicted_gap"] == pytest.approx(gap, abs=0.01)
    assert pair["tokens"]["agrees"] is (law_lower == "T1" and gap > 0.05)
    text = Path("reports/plan.md").read_text()
    assert "Check runs, out of sample" in text and "at x2, T1 and T2: measured T1 lower" in text
    caveat = "but check runs disagree: at x2 of the budget T1 measured" in claim_a_note()  # a wrong side named
    assert caveat is (pair["budget"]["agrees"] is False)


@pytest.mark.parametrize("measured, predicted, verdict", [
    ((7.0, 8.0), (7.1, 7.9), True),     # the same side
    ((7.0, 8.0), (7.9, 7.1), False),    # the other side
    ((7.0, 8.0), (7.4, 7.41), False),   # the prediction a tie: no side to agree with
    ((7.0, 7.02), (7.0, 8.0), None),    # the measured losses a tie: no verdict
])
def test_a_check_pair_agrees_only_with_a_predicted_side(measured, predicted, verdict):
    from lib.plan_checks import check_pairs
    checks = [{"size": s, "fraction": 3.0, "measured": m, "predicted_at_tokens": p, "predicted": p}
              for s, m, p in zip(("S", "L"), measured, predicted)]
    [pair] = check_pairs(checks, tolerance=0.05)
    assert pair["tokens"]["agrees"] is verdict and pair["budget"]["agrees"] is verdict


def test_check_runs_skip_the_calibrated_fractions_and_other_sizes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    CALIBRATION.mkdir(parents=True)
    for stem in ("pretrain-L4-0.125", "pretrain-L4-1.0", "pretrain-L4-H256-3.0", "train_mt-L4-2.0"):
        (CALIBRATION / f"{stem}.csv").write_text("updates\n")
    assert check_runs("pretrain", "L4", [0.125, 0.25]) == [(CALIBRATION / "pretrain-L4-1.0.csv", "check", 1.0)]


def test_plan_stage_names_a_missing_calibration_run(calibrated):
    from lib.errors import StageError
    from stages import plan
    calibration_files("train_mt", "T2", 0.25)[0].unlink()
    with pytest.raises(StageError, match=r"train_mt-T2-0.25.csv: missing \(run `dvc repro plan/dvc.yaml`"):
        plan.main([])


def test_no_plan_no_note(tmp_path):
    assert claim_a_note(tmp_path / "plan.json") == ""
    verdict = ("(a) claim", "inconclusive", "evidence")
    assert with_plan_note(verdict, tmp_path / "plan.json") == verdict


def test_the_note_with_one_pair_larger_better_throughout_and_one_from_a_budget(tmp_path):
    """The committed run's case: the width sweep's larger size ahead at every budget, the depth sweep's from 590 s."""
    pairs = [{"small": "L4-H128", "large": "L4-H256", "budget": None, "larger_better": "throughout", "interval": [None, None]},
             {"small": "L2-H256", "large": "L4-H256", "budget": 589.9, "larger_better": "above", "interval": [44.8, 9.65e4]}]
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({"mlm": {"crossovers": pairs, "unit": "seconds", "range": [10, 1e6]}}))
    note = claim_a_note(path)
    assert "claim (a) would start to hold here at 590 seconds" in note, note
    assert "L4-H256 over L4-H128 throughout within 10-1e+06 seconds" in note, note


# ---------------------------------------------------------------- DVC: calibration only when asked

def test_default_repro_leaves_the_calibration_runs_out(tmp_path, monkeypatch):
    """What `dvc repro` (no targets: dvc.yaml) and `dvc repro plan/dvc.yaml` would run, by DVC's own
    planning (dvc.repo.reproduce), on a fresh tiny project."""
    from dvc.repo import Repo
    from dvc.repo.reproduce import collect_stages, get_active_graph, plan_repro
    project = make_tiny_project(tmp_path)
    shutil.copytree(REPO / "plan", project / "plan")
    monkeypatch.chdir(project)
    Repo.init(no_scm=True)
    repo = Repo(str(project))

    def planned(target):
        return {s.addressing for s in plan_repro(get_active_graph(repo.index.graph),
                                                 collect_stages(repo, [target]))}
    default = planned("dvc.yaml")
    assert "report" in default and not [s for s in default if "calibrate" in s or "plan" in s]
    on_request = planned("plan/dvc.yaml")
    assert "plan/dvc.yaml:calibrate_mlm@L2-H256-0.3" in on_request and "plan/dvc.yaml:plan" in on_request
    assert "prepare_mt" in on_request and "report" not in on_request and "pretrain@L2-H256" not in on_request


@pytest.mark.parametrize("edit, message", [
    (lambda p: p.update(fractions=[0.25, 1.0]), "plan: fractions.1: 1.0 is outside (0, 1)"),
    (lambda p: p.update(fractions=[0.25, 0.25]), "plan: fractions: values are listed twice"),
    (lambda p: p.update(crossover_range=[100, 10]), "plan: crossover_range: [100.0, 10.0] must be [low, high]"),
    (lambda p: p.update(fix_beta=0), "plan.fix_beta: Input should be greater than 0"),
])
def test_plan_params_are_validated_up_front(tmp_path, edit, message):
    from conftest import read_params, write_params
    from lib.errors import StageError
    params = read_params(REPO)
    edit(params["plan"])
    write_params(tmp_path, params)
    with pytest.raises(StageError) as e:
        load_params(tmp_path / "params.yaml")
    assert message in str(e.value)


def test_calibrate_takes_a_candidate_size_and_a_share_of_the_budget(tiny_project):
    from lib.errors import StageError
    from stages import calibrate
    for argv in (["mlm", "L9-H9", "0.5"], ["mlm", "L2-H256", "0"], ["lm", "L2-H256", "0.5"], ["mlm", "L2-H256"]):
        with pytest.raises(StageError, match=re.escape("usage: python -m stages.calibrate mlm|mt SIZE FRACTION")):
            calibrate.main(argv)
