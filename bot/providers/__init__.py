"""Provider clients, one file each, behind the small interfaces in :mod:`bot.providers.base`."""
