"""The report's model card: what the model is for, what it learnt from and how, how it was judged, its limits.

Built from one fold's configuration (:attr:`~skintumor.evaluate.sweep.Sweep.config`, a plain dict) and
the report's numbers (:func:`~skintumor.evaluate.summary.evaluate_sweep`). Configurations differ between
versions and recipes, so every key is optional: a missing one (or an unresolved ``${...}``) leaves its
line out, never the card. A short TRIPOD+AI checklist (Collins et al., BMJ 2024) closes it: where this
report answers each item that applies to a cross-validation, and which items it does not answer.

:func:`model_card_section` returns a :class:`~skintumor.evaluate.document.Document` whose blocks
:func:`skintumor.evaluate.report.report_document` appends under its title, as it does the explanations.
"""

from __future__ import annotations

from skintumor.evaluate.document import Document
from skintumor.evaluate.formatting import ci_text

TITLE = "Model card"
STUDY_CLASSES = "epidermal cyst, lipoma and pilomatricoma"
NOT_HERE = "not in this report"


def setting(config: dict | None, key: str):
    """``config`` value at a dotted ``key`` (``"data.image_size"``); None when absent or an unresolved
    interpolation (``.hydra/config.yaml`` keeps ``${...}``)."""
    value = config or {}
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return None if isinstance(value, str) and "${" in value else value


def _lines(*pairs: tuple[object, str]) -> list[str]:
    """The texts whose value is known (not None), in order."""
    return [text for value, text in pairs if value is not None]


def _architecture(config: dict | None) -> str | None:
    net = setting(config, "model.net")
    if not isinstance(net, dict):
        return None
    text = "ResNet18 with two grid attention gates" if net.get("attention") else "ResNet18"
    if net.get("weights_path") and "${" not in str(net["weights_path"]):
        text += f", started from `{net['weights_path']}`"
    elif "pretrained" in net:
        text += ", ImageNet-pretrained" if net["pretrained"] else ", trained from scratch"
    if net.get("lesion_decoder"):
        text += ", with a lesion decoder (multi-task: it also outlines the lesion in training)"
    return text


def _loss(config: dict | None) -> str | None:
    loss = setting(config, "model.loss")
    if not isinstance(loss, dict):
        return None
    gamma = loss.get("gamma")
    text = "cross-entropy" if gamma == 0 else f"focal loss (gamma {gamma})" if gamma is not None else "focal loss"
    extras = _lines(
        (loss.get("alpha"), f"class weights `{loss.get('alpha')}`"),
        (loss.get("label_smoothing") or None, f"label smoothing {loss.get('label_smoothing')}"),
        (loss.get("mask_weight") or None, f"lesion-mask guidance of the gates (weight {loss.get('mask_weight')})"),
    )
    return text + (", " + ", ".join(extras) if extras else "")


def _optimiser(config: dict | None) -> str | None:
    name, lr = setting(config, "model.optimizer.name"), setting(config, "model.optimizer.lr")
    if name is None and lr is None:
        return None
    text = str(name or "optimizer") + (f", learning rate {lr:g}" if isinstance(lr, (int, float)) else "")
    text += f", learning rate {lr}" if isinstance(lr, str) else ""
    decay = setting(config, "model.optimizer.weight_decay")
    return text + (f", weight decay {decay:g}" if isinstance(decay, (int, float)) and decay else "")


def _scheduler(config: dict | None) -> str | None:
    sched = setting(config, "model.scheduler")
    if not isinstance(sched, dict) or "name" not in sched:
        return None
    if sched["name"] == "step" and "step_size" in sched:
        return f"step: learning rate x {sched.get('gamma')} every {sched['step_size']} epochs"
    if sched["name"] == "cosine":
        return f"cosine to {sched.get('min_lr')} after {sched.get('warmup_epochs', 0)} warm-up epoch(s)"
    return str(sched["name"])


def intended_use(doc: Document, classes: list[str]) -> None:
    doc.heading("Intended use", 3)
    doc.text(
        f"Research use: a second reader in studies that classify ultrasound images into {', '.join(classes)} "
        f"(the framework was built for benign skin tumours: {STUDY_CLASSES}). "
        "Input: one B-mode image of a lesion; output: a probability per class (and a conformal set). "
        "**Not a medical device**: not for diagnosis or treatment decisions without a physician."
    )


def data_section(doc: Document, config: dict | None, result: dict) -> None:
    doc.heading("Data", 3)
    cohort = result.get("cohort") or {}
    total, per_class = cohort.get("total") or {}, cohort.get("per_class") or {}
    source, root = setting(config, "data.source"), setting(config, "data.root")
    size, mean, sd = (setting(config, f"data.{k}") for k in ("image_size", "mean", "std"))
    n_folds, seed = setting(config, "data.n_folds"), setting(config, "data.seed")
    dedup, distance = setting(config, "data.dedup"), setting(config, "data.max_distance")
    folds = "Outer folds: patient-grouped and stratified by class (a patient's images are in one fold only)"
    folds += f", {n_folds} folds" if n_folds is not None else ""
    folds += f", partition seed {seed}" if seed is not None else ""
    if dedup:
        folds += (
            "; near-duplicate images are joined into one group (`data.dedup`"
            + (f", hash distance <= {distance}" if distance is not None else "")
            + ") that no split divides"
        )
    elif dedup is not None:
        folds += "; no near-duplicate grouping (`data.dedup=false`)"
    inner = setting(config, "data.val_fraction")
    if inner is not None:
        folds += f"; each training part keeps about {inner:.0%} of its patients as the inner validation split"
    doc.bullets(
        _lines(
            (source, f"Source: `{source}`" + (f", root `{root}`" if root is not None else "")),
            (
                total or None,
                f"Cohort: {total.get('images')} images, {total.get('patients')} patients, {total.get('groups')} "
                "duplicate-aware groups; per class: "
                + "; ".join(f"{c} {v['images']} / {v['patients']} / {v['groups']}" for c, v in per_class.items())
                + " (images / patients / groups; table Cohort)",
            ),
            (
                size,
                f"Images resized to {size} x {size} px"
                + (f", normalised as (x / 255 - {mean}) / {sd}" if mean is not None and sd is not None else ""),
            ),
            (True, folds + "."),
            (
                True if setting(config, "data.nested") else None,
                "`data.nested=true`: the tested fold is a stand-in inside each training part, not the outer test fold.",
            ),
        )
    )


def training_section(doc: Document, config: dict | None) -> None:
    doc.heading("Model and training", 3)
    epochs, batch = setting(config, "trainer.max_epochs"), setting(config, "data.batch_size")
    augment, sampler = setting(config, "augment.name"), setting(config, "data.sampler")
    checkpoint, decision = setting(config, "test_checkpoint"), setting(config, "model.decision")
    calibration, tta = setting(config, "model.calibration"), setting(config, "model.tta")
    items = _lines(
        (_architecture(config), f"Architecture: {_architecture(config)}."),
        (_loss(config), f"Loss: {_loss(config)}."),
        (_optimiser(config), f"Optimizer: {_optimiser(config)}."),
        (_scheduler(config), f"Scheduler: {_scheduler(config)}."),
        (epochs, f"Epochs: {epochs}."),
        (batch, f"Batch size: {batch}" + (f", `{sampler}` sampler" if sampler else "") + "."),
        (augment, f"Augmentation: `{augment}`."),
        (
            checkpoint,
            f"Tested checkpoint: `{checkpoint}`"
            + {"best": " (the epoch the inner validation split chose)", "last": " (the final epoch)"}.get(
                str(checkpoint), ""
            )
            + ".",
        ),
        (
            decision,
            f"Decision rule: `{decision}`"
            + {
                "argmax": " (the most probable class)",
                "balanced": " (class offsets chosen on the inner validation split for balanced accuracy)",
            }.get(str(decision), "")
            + ".",
        ),
        (
            calibration,
            f"Calibration: `{calibration}`"
            + {"temperature": " (one temperature fitted on the inner validation split)"}.get(str(calibration), "")
            + ".",
        ),
        (tta, f"Test-time augmentation: `{tta}`."),
    )
    if not items:
        items = ["The folds' configuration (`.hydra/config.yaml` or `run.yaml`) was not found: settings unknown."]
    doc.bullets(items)


def evaluation_section(doc: Document, result: dict) -> None:
    doc.heading("Evaluation", 3)
    image, patient = (result.get(level, {}).get("pooled", {}) for level in ("image", "patient"))
    temperature = result.get("temperature") or {}
    doc.bullets(
        [
            "Cross-validation: each outer test fold is scored once, by a model that never saw it. Whatever is "
            "chosen after training (the checkpoint with `test_checkpoint=best`, class offsets, temperature, "
            "conformal thresholds) comes from the inner validation split of the training part"
            + (f"; the temperature in Calibration was {temperature['source']}" if temperature.get("source") else "")
            + ".",
            f"Headline, pooled out-of-fold ({result.get('coverage', 'folds unknown')}), 95 % group-bootstrap "
            f"intervals: macro AUROC {ci_text(image.get('auroc_macro'))} and balanced accuracy "
            f"{ci_text(image.get('bal_acc'))} (images); {ci_text(patient.get('auroc_macro'))} and "
            f"{ci_text(patient.get('bal_acc'))} (patients).",
        ]
    )


def limitations(doc: Document, config: dict | None, result: dict) -> None:
    doc.heading("Limitations", 3)
    cohort = result.get("cohort") or {}
    per_class = cohort.get("per_class") or {}
    smallest = min(per_class.items(), key=lambda kv: kv[1]["patients"]) if per_class else None
    source = setting(config, "data.source")
    items = [
        f"Few patients for a deep network: {result.get('n_patients')} in all"
        + (f", the fewest with {smallest[0]} ({smallest[1]['patients']})" if smallest else "")
        + "; intervals are wide and per-class numbers rest on few cases.",
        "Single-centre data unless the data set"
        + (f" (`{source}`)" if source else "")
        + " spans several centres and scanners; without external validation, performance elsewhere is unknown.",
        "The confidence intervals resample patient groups of the pooled predictions: they ignore the variation "
        "between models trained on other data or seeds, beyond what the SD over folds shows.",
        "Calibration (temperature, class offsets, conformal thresholds) was fitted on this data set's validation "
        "splits and may not transfer to another scanner or setting.",
        "Conformal sets cover the true class at the target rate marginally (over images), not per class or patient.",
    ]
    if result.get("n_patients") == result.get("n_images"):
        items.append(
            "No patient ids: each image counts as its own patient, so images of one patient can sit in different "
            "folds unless near-duplicate grouping joined them."
        )
    if result.get("folds_missing"):
        missing = ", ".join(result["folds_missing"])
        items.append(f"Missing folds ({missing}): every number covers the tested folds only.")
    doc.bullets(items)


def tripod_table(doc: Document, config: dict | None, result: dict) -> None:
    doc.heading("TRIPOD+AI checklist (items that apply to a cross-validation report)", 3)
    source, size = setting(config, "data.source"), setting(config, "data.image_size")
    missing = result.get("folds_missing") or {}
    reported, partly = "reported", "partly"
    rows = [
        ["Source of data", "Model card: Data", f"{reported}: `{source}`" if source else "source not in the config"],
        ["Participants", "Cohort", f"{partly}: counts per class; eligibility criteria are the data set's"],
        ["Outcome", "Cohort (class labels)", f"{partly}: labels as filed; how they were ascertained is not here"],
        [
            "Predictors",
            "Model card: Data",
            f"{reported}: the image, resized to {size} px, normalised" if size else f"{partly}: image settings unknown",
        ],
        ["Sample size", "Cohort", f"{partly}: counts; no sample-size calculation"],
        [
            "Missing data",
            "top of the report",
            f"{len(missing)} fold(s) missing, named" if missing else "no fold missing; excluded images not listed",
        ],
        ["Analysis methods", "Model card; How the numbers are computed", reported],
        ["Performance: discrimination, classification", "Main results; per class; confusion; ROC", reported],
        ["Performance: calibration", "Calibration; reliability diagrams", reported],
        [
            "Model specification",
            "Model card; each fold's `.hydra/config.yaml`, `run.yaml`",
            reported if config else "configuration not found",
        ],
        ["Limitations", "Model card: Limitations", reported],
        ["Fairness, subgroups (sex, age, scanner)", "-", NOT_HERE],
        ["External validation", "-", NOT_HERE],
        ["Clinical utility (decision curves, impact)", "-", NOT_HERE],
    ]
    doc.table(["item", "where in this report", "status"], rows)


def model_card_section(config: dict | None, result: dict, classes: list[str]) -> Document:
    """The model card of a sweep (sections in the module docstring) from the first fold's ``config``
    (None or empty: settings unknown) and the report's ``result``."""
    doc = Document(TITLE)
    if result.get("members"):
        doc.text(f"An ensemble of {len(result['members'])} sweeps: the settings below are its first member's.")
    intended_use(doc, classes)
    data_section(doc, config, result)
    training_section(doc, config)
    evaluation_section(doc, result)
    limitations(doc, config, result)
    tripod_table(doc, config, result)
    return doc


__all__ = ["TITLE", "setting", "model_card_section"]
