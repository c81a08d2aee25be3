import sys

from mechscope.app.cli import main

sys.exit(main())
