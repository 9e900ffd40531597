"""The data layer: reading images and checking files, pairing them by name, seeded test noise, the training
set's degradation types and files, and the data doctor (``--check-data``)."""
