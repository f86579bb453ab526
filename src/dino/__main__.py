import sys

from dino.cli import main

sys.exit(main())
