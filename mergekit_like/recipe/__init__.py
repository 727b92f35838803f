"""Stage 1, the recipe: what the user asked for, validated, before any model is opened.

``models`` holds the pydantic models of a recipe file, ``loading`` reads and validates one
(with ``yaml_lines`` giving every field its line), ``checks`` the rules pydantic cannot
express, ``parameters`` the per-model and per-layer parameter lookup, ``multi`` multi-document
files, ``soups`` the soup methods' fields and names, ``schema`` the JSON Schema. Nothing here
imports torch.
"""
