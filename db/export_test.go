package db

// LoadMigrations exposes loadMigrations to the tests.
var LoadMigrations = loadMigrations
