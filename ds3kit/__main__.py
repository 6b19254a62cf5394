import sys

from ds3kit.cli import main

sys.exit(main())
