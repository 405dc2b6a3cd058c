"""``python -m ranlens``: the same as the ``ranlens`` command."""

from ranlens.cli import main

if __name__ == "__main__":
    main()
