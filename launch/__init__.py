"""The grid launcher: every training (and per-model compress/evaluate) stage of dvc.yaml as its own job,
on one machine (`python -m launch local -j N`) or on SLURM (`python -m launch slurm`).

Each job runs `dvc repro --single-item <stage>` in its own git checkout of the submitted commit; all
checkouts share the workspace's DVC cache, so every finished job lands in DVC's run-cache, and a final
`dvc repro` in the workspace restores them all instead of training. docs/gpus-and-slurm.md: "Running the grid in
parallel".
"""
