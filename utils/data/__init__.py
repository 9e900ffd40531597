"""Reading images, pairing them by name, seeded test noise."""
