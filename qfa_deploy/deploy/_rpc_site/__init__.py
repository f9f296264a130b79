"""Holds the sitecustomize that hides torch from the RPC processes we start (a package so wheels ship it)."""
