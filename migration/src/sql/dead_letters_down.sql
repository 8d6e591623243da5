DROP TABLE dead_letter_history;
DROP TABLE dead_letter_actions;
DROP TABLE dead_letters;
