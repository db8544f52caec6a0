"""twindns network state: interface, addresses, NOTRACK/ACCEPT rules."""
