"""Worker processes behind one port: the supervisor that starts, watches and stops them."""
