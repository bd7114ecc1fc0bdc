"""The Flask extension objects, made once here and bound to the app by create_app.

Blueprints import them from here (never from the package root), so importing
a web module does not import the app factory.
"""

from flask_wtf.csrf import CSRFProtect

csrf = CSRFProtect()
