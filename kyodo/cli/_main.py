"""``python -m kyodo.cli._main``: the ``kyodo`` command without the installed script."""

from kyodo.cli import main

if __name__ == "__main__":
    main()
