"""meterveil protocol"""
