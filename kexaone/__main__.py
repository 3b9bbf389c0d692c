import sys

from kexaone.cli import main

sys.exit(main())
