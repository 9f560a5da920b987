import sys

from wgrouter import cli

sys.exit(cli.main())
