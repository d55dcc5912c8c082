"""``cadre ui``: the web console (an aiohttp server with server-sent events, static assets in
``cadre/static``). :mod:`.index` keeps every workflow's row in memory from one pass over the event
stream, :mod:`.feed` keeps it live, :mod:`.views` builds a workflow's page from its records,
:mod:`.actions` sends what the buttons ask, :mod:`.server` serves it all."""
