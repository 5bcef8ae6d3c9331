"""`python -m distill_export` is the CLI (torchrun runs `-m distill_export run ...`)."""

from distill_export.entry import main

if __name__ == "__main__":
    main()
