import sys

from boneage.cli import main

sys.exit(main())
