"""Privacy cost of answered queries: pure RDP maths (rdp.py), kNN votes (knn.py), accountants."""
