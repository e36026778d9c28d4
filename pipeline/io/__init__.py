"""All pixel and volume I/O: Pillow, SimpleITK, DICOM-SEG, display turns. Imports no other wing."""
