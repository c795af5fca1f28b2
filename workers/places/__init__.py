"""Where a photo was taken: the Nominatim and offline geocoders and the installation-wide limiter."""
