"""megastride.launch"""
