"""`python -m defectscope`: the same command as the `defectscope` script."""

from defectscope.cli import main

main()
