"""Blocks used by two or more families; a block used by one family lives in its model file.

Import from the submodule that defines a block (`from visionzoo.layers.drop import DropPath`),
so each file stays the one place its block is defined.
"""
