"""The pure facts of a mask: centroid, zones, components, patient side, relations, and the
slicing and orientation of volumes. Imports no other wing."""
