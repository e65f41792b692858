"""The contract, the error tree, the plugin machinery and URL configuration."""
