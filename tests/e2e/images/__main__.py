import sys

from tests.e2e.images.build import main

main(sys.argv[1:])
