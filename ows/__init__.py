"""WMS 1.3.0 and WFS 2.0 over the platform's collections, answered by MapServer from a mapfile made from them."""
