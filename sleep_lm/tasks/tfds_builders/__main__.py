"""``python -m sleep_lm.tasks.tfds_builders --data_dir=DIR NAME ...``: materialise data sets."""

from sleep_lm.tasks.tfds_builders import main

if __name__ == "__main__":
    raise SystemExit(main())
