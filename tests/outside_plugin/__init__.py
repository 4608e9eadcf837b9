"""A backend written the way an outside author would write one: only against
``loraswitch.core.api`` and docs/plugins.md (see plain_torch/ and test_plain_torch.py)."""
