"""Sharing and comparing runs: push to the Hugging Face Hub with a model card, tables of runs.

    record.py      RunRecord: what a run folder says about itself (config, summary, best/, calibration)
    card.py        model_card: README.md with the Hub's metadata, for a run
    hub.py         push: best/, the card, the plots and exported files to a Hub repo (or a local folder)
    comparison.py  runs, plot_runs: the runs under some folders, one row each

Loading back (`load_model("hf-hub:OWNER/NAME")`) is `visionzoo.factory` and `visionzoo.weights`'s work;
tracking during training (`--track mlflow|wandb`) is `visionzoo.training.tracking`'s.
"""
