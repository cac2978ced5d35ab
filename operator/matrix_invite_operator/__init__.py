"""matrix-invite-operator: Invitations in Git become registration tokens, Secrets and mails."""

__version__ = "0.1.0"
