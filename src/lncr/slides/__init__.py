"""Reading whole-slide images."""
