import sys

from cryonb.cli import main

sys.exit(main())
