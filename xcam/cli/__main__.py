"""``python -m xcam.cli``, as ``python -m xcam`` and the ``xcam`` script."""

from xcam.cli import main

main()
