"""Durable state of the control plane behind one interface (see base.Store)."""
