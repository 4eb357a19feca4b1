"""Regenerate ROW/kernels and ROW/policies from kernels/ (see stage0/ledger/kernel_rows.py)."""

from stage0.ledger.kernel_rows import write

if __name__ == "__main__":
    for path in write():
        print(f"wrote {path}")
