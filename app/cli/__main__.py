"""``python -m app.cli`` runs the ``chatbots`` command."""

from app.cli import main

main()
