"""Faces after detection: the index of approved faces, the filing rules, the writer that files
faces and rematches them, suggested people, and the face-API client."""
