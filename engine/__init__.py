"""megastride.engine"""
