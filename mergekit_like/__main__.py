import sys

from mergekit_like.cli import main

sys.exit(main())
