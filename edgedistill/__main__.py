"""``python -m edgedistill`` (also what ``torchrun -m edgedistill`` runs on every rank)."""

from edgedistill.cli import main

if __name__ == "__main__":
    main()
