"""Recipes: ``get_recipe(name)``, ``list_recipes()``, and the base class in ``convrnn.recipes.base``."""
from convrnn.recipes.base import CliOption, DataBundle, Recipe, get_recipe, list_recipes, register_recipe

__all__ = ["CliOption", "DataBundle", "Recipe", "get_recipe", "list_recipes", "register_recipe"]
