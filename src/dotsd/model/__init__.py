"""DOTS data model: the signal channel CBOR key table (:mod:`.cbor_keys`), the JSON <-> CBOR
codec (:mod:`.codec`, RFC 9132 §6), its errors (:mod:`.errors`) and YANG validation
(:mod:`.yang`, which loads yangson and the modules).

Submodules are imported explicitly; importing this package loads nothing else (the command
line reads :mod:`.errors` without paying for the codec).
"""
