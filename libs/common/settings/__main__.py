"""`python -m common.settings --markdown` prints the README's configuration table."""

import sys

from common.settings import markdown_table

if "--markdown" in sys.argv:
    sys.stdout.write(markdown_table())
